"""emoflow.evaluation"""
