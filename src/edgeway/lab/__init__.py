"""edgeway.lab"""
