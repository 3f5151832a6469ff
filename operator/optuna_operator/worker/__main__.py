"""`python -m optuna_operator.worker`: the same as `optuna-operator worker`."""

import sys

from optuna_operator.worker.main import main

if __name__ == "__main__":
    sys.exit(main())
