"""emoflow.serving"""
