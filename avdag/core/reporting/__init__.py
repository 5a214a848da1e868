"""What a team reads: baseline vs fine-tuned statistics and charts, the clip catalog, a score's lineage.

- `statistics`: question_stats, bootstrap_mean_interval, multiple_choice_table
- `charts`: compare_scores, comparison_chart, loss_curve_png
- `catalog`: build_catalog, search
- `lineage`: score_lineage, format_lineage
"""
