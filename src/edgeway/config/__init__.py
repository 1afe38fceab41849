"""edgeway.config"""
