"""autoencoders"""
