"""edgeway.routing"""
