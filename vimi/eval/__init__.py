"""Evaluation: ShapeWorld analytic scores (`vimi.eval.shapeworld`)."""
