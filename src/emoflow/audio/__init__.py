"""emoflow.audio"""
