module optuna-operator.local/pause

go 1.22
