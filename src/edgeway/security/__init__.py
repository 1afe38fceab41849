"""edgeway.security"""
