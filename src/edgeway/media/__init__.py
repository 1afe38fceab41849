"""edgeway.media"""
