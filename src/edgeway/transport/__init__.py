"""edgeway.transport"""
