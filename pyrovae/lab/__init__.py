"""Research tooling on top of the library: checking estimators against each other and the truth.

============  ====================================================================================
``compare``   every ELBO/log-likelihood estimator on the same data, paired, with common random numbers
``gradients`` the encoder gradient's variance: reparameterization against the score function
``exact``     models whose log p(x) is known exactly (PPCA, the notes' toy model)
``evidence``  VAEs trained on those models, their ELBO and IWAE against the exact evidence
``baselines`` the non-deep baselines: Gaussians and mixtures fitted by maximum likelihood
``report``    means, standard errors and aligned text tables
============  ====================================================================================
"""
