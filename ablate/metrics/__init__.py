"""What a run measures: the estimators (IW NLL, −ELBO, KL, MI, AU), their standard errors, and the one metric schema."""
