"""tf_simclr: SimCLRv2 (pretrain, finetune, distill, export) for TensorFlow 2 / tf_keras.

install_requires says which versions tf_simclr supports; constraints.txt pins
the exact versions it is tested with (scripts/setup_env.sh installs with
`pip install -c constraints.txt -e ".[test]"`). The wheel installs one
top-level package, tf_simclr, and two commands: tf-simclr (the checkout's
run.py) and tf-simclr-export (the checkout's `python -m export`).
"""

import setuptools

setuptools.setup(
    name='tf_simclr',
    version='0.1.0',
    description='SimCLRv2 for TensorFlow 2 / tf_keras: contrastive pretraining, '
                'fine-tuning from the projection head, distillation, TF-Hub '
                'and TF Serving exports.',
    # Only tf_simclr: the checkout's run.py and export/ are shims over
    # tf_simclr.cli and tf_simclr.export, not installed.
    packages=setuptools.find_packages(include=['tf_simclr', 'tf_simclr.*']),
    entry_points={
        'console_scripts': [
            'tf-simclr = tf_simclr.cli:console_main',
            'tf-simclr-export = tf_simclr.export.cli:console_main',
        ],
    },
    python_requires='>=3.10',
    install_requires=[
        # tf-keras, tf-models-official and tensorflow-hub are built against
        # one TensorFlow minor version.
        'tensorflow>=2.20,<2.21',
        'tf-keras>=2.20,<2.21',
        'tf-models-official>=2.20,<2.21',
        'tensorflow-datasets>=4.9,<5',
        # tensorflow-datasets 4.9.10 imports it on Python 3.11 without
        # declaring it.
        'importlib_resources>=5',
        'tensorflow-hub>=0.16,<0.17',
        'absl-py>=1.4,<3',
        'numpy>=1.26,<3',
    ],
    extras_require={
        'test': ['pytest>=8', 'pillow>=10',
                 'tensorflow-serving-api>=2.20,<2.21'],
    },
)
