"""What a team reads: baseline vs fine-tuned statistics and charts, the clip catalog, a score's lineage.

- `statistics`: question_stats, mean_interval (Student t), score_outcomes, multiple_choice_table
- `charts`: compare_scores, comparison_chart, loss_curve_png
- `constant_answer`: the commonest train answer per field, scored as a model would be
- `promotion`: the champion/challenger rule
- `catalog`: build_catalog, search
- `lineage`: score_lineage, format_lineage
"""
