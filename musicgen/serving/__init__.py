"""The Cog glue: predict.py and train.py read as Cog reads them, cog.yaml's refs, the worker threads
behind predict(), one prediction end to end, the server launcher, our patches to Cog's runtime,
and the predictors' setup (start.py)."""
