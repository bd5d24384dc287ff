"""lovt_keras.training"""
