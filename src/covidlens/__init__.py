"""covidlens: COVID-19 classifiers of chest CT and X-ray on one honest pipeline."""

__version__ = "0.1.0"
