"""The offline SageMaker behind the local AWS endpoint: moto's server, patched so that resources really run here.

One module per SageMaker resource, over shared pieces that follow SageMaker's own contract (being filled in
from tools/local_training.py).
"""
