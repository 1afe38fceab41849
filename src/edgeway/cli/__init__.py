"""edgeway.cli"""
