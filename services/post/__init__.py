"""
The Post service: posts and authors' timelines.
"""
