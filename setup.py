"""tf_simclr: SimCLRv2 (pretrain, finetune, distill, export) for TensorFlow 2 / tf_keras."""

import setuptools

setuptools.setup(
    name='tf_simclr',
    version='0.1.0',
    description='SimCLRv2 for TensorFlow 2 / tf_keras: contrastive pretraining, '
                'fine-tuning from the projection head, distillation, TF-Hub '
                'and TF Serving exports.',
    packages=setuptools.find_packages(include=['tf_simclr', 'tf_simclr.*',
                                               'export', 'export.*']),
    py_modules=['run'],
    python_requires='>=3.10',
    install_requires=[
        'tensorflow==2.20.0',
        'tf-keras==2.20.1',
        'tf-models-official==2.20.0',
        'tensorflow-datasets==4.9.10',
        # tensorflow-datasets 4.9.10 imports it on Python 3.11 without
        # declaring it.
        'importlib_resources==7.1.0',
        'tensorflow-hub==0.16.1',
        'absl-py==1.4.0',
        'numpy==2.4.6',
        'pillow==13.0.0',
    ],
    extras_require={
        'test': ['pytest==9.0.3', 'tensorflow-serving-api==2.20.0'],
    },
)
