"""KFP components: one thin component per pipeline step, each calling one function of emoflow.steps."""
