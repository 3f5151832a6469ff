"""A study's lifecycle, in the words the operator and the worker share: when it stops and
when it has failed (`stopping`), the conditions and reasons its status explains that with
(`conditions`), and the budgets that cannot work as the user means them (`advice`). Pure
rules only: no Kubernetes, no database."""
