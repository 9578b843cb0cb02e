"""Studies: experiments built from chains (the order study, the search) and the two papers' own studies
(Predictive Exit, feature-map compression). Each has its schema, runner and report."""
