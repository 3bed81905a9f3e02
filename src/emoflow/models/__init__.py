"""emoflow.models"""
