"""emoflow.training"""
