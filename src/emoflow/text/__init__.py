"""emoflow.text"""
