"""emoflow.monitoring"""
