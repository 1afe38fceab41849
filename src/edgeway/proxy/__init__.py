"""edgeway.proxy"""
