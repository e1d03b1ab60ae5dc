"""mctq-job: quantize a Keras image classifier with MCT, export TFLite, measure the accuracy cost."""

__version__ = "0.1.0"
