"""golf: parameter-constrained language-model training with a hybrid SSM/attention backbone."""

__version__ = "0.1.0"
