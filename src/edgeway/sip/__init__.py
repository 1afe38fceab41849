"""edgeway.sip"""
