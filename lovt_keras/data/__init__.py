"""lovt_keras.data"""
