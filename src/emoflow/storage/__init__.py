"""emoflow.storage"""
