"""edgeway.traversal"""
