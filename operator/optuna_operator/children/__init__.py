"""The Kubernetes objects a study is served by, as they should be: the worker Job, the
dashboard (the namespace's or the study's own) and the export ConfigMap (`manifests`), the
user's podTemplate merged under the operator's rules (`overlay`), which dashboard serves a
study (`dashboards`), the digest a child carries of its manifest (`applied`), and all of a
study's children built in one call (`desired`). Pure builders: whether a child must be sent
is the reconcile's decide step, and sending it is the act step."""
