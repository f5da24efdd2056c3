"""Scoring with a trained preference model: the `Judge` interface every consumer talks to, the kinds that
implement it, and the one batched forward of value-head models.

`Judge` (base.py) is what eval, calibrate, the apps (score/rank/filter/make-pairs) and the server use:
  compare(prompts, a, b)     -> P(a ≻ b) per prompt, every kind
  rank(prompt, candidates)   -> candidates best first, every kind
  score(prompts, responses)  -> a number per response, pointwise kinds (`pointwise`); others raise NoScores
`load_judge` / `judge_from_config` (judges.py) pick the kind from the saved folder. `RewardScorer`
(reward.py) serves every value-head kind; `run_model` (run.py) is their one batched forward.
"""

from rewardkit.scoring.base import (RANK_STRATEGIES, Comparison, Judge, NoScores, PairwiseJudge, PointwiseJudge,
                                    Ranking, ScoreDetails, Scorer, UnscorableResponse, comparisons, rank_scores)
from rewardkit.scoring.judges import JUDGES, judge_from_config, load_judge, saved_kind
from rewardkit.scoring.reward import RewardScorer
from rewardkit.scoring.run import (EvalShard, current_shard, length_batches, pair_rewards, run_model,
                                   score_sequences, sharded_scoring)

__all__ = ["JUDGES", "RANK_STRATEGIES", "Comparison", "EvalShard", "Judge", "NoScores", "PairwiseJudge",
           "PointwiseJudge", "Ranking", "RewardScorer", "ScoreDetails", "Scorer", "comparisons", "current_shard",
           "judge_from_config", "length_batches", "load_judge", "pair_rewards", "rank_scores", "run_model",
           "saved_kind", "score_sequences", "sharded_scoring", "UnscorableResponse"]
