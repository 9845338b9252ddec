"""Training side of models: needs the `train` extra (scikit-learn, skl2onnx, onnx).

Never imported by the edge agent.
"""
