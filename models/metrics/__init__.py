"""The networks and the pure arithmetic behind the evaluation metrics, shared by evaluation and training validation.

    from models.metrics.lpips import build_lpips              # LPIPS (AlexNet, v0.1), the `lpips` package's numbers
    from models.metrics.inception import build_fid_inception  # pytorch-fid's Inception-v3, 2048-d pool3 features
    from models.metrics.fid import FeatureStatistics, frechet_distance, kernel_inception_distance

The networks take state dicts; their files (the ImageNet AlexNet of torchvision, `alexnet-owt-7be5be79.pth`;
pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`; LPIPS's linear heads inside the `lpips` wheel) are read by
the weights registry, from the weights directory or torch hub's checkpoint folder: `storage.networks.lpips(registry)`
and `storage.networks.fid_inception(registry)`. Nothing is downloaded.
"""
