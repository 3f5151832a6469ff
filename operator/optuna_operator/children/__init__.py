"""The Kubernetes objects a study is served by, as they should be: the worker Job, the
dashboard (the namespace's or the study's own) and the export ConfigMap (`manifests`), the
user's podTemplate merged under the operator's rules (`overlay`), which dashboard serves a
study (`dashboards`), and the digest that says whether a child must be sent again
(`applied`). Pure builders: what is sent, and when, is the reconcile's act step."""
