"""edgeway.diag"""
