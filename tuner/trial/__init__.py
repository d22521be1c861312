"""One trial, as Ray runs it in a worker: CIFAR-10 on the device (data), where it trains (device), one epoch
(epoch), the metric names it reports (metric_names), and the Ray trainable that ties them to a trainer from models/
(trainable)."""
