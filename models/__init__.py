"""Test and benchmark models: builders in code, the committed Fashion-MNIST example, the real zoo.

Only `builders` is imported by tests and passes; `fashion_cnn` and `zoo` are scripts that need
torch and friends, which onnxopt itself never imports.
"""
