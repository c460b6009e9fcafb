"""validate: the task metric of a model, against labels or a float32 reference."""

from edgetune.validate.evaluate import EvaluateConfig, EvaluateResult, evaluate, run_outputs

__all__ = ["EvaluateConfig", "EvaluateResult", "evaluate", "run_outputs"]
