"""lovt_keras: LoVT localized image-report pretraining in Keras 3."""

__version__ = "0.1.0"
