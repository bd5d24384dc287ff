"""lovt_keras.analysis"""
