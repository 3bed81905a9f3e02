"""emoflow.registry"""
