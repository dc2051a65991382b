"""The shipped demo CLIP: its synthetic data set, training, evaluation and CIFAR writer."""
