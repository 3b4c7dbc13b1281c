"""The active-learning campaign, free of any workflow engine: its configuration and
folder, one :class:`Campaign` object (configuration, folder, store, labeller) handed to
the stages of a round (pretraining data, exploration, the generator's proposals,
selection, training, evaluation, the scaling decision), round records and stop rules,
and the report. Prefect wraps these stages in :mod:`sapis.tasks` and :mod:`sapis.flows`.
"""

from sapis.campaign.campaign import Campaign
from sapis.campaign.config import CampaignConfig, load_config, parse_config
from sapis.campaign.folder import CampaignFolder

__all__ = ["Campaign", "CampaignConfig", "CampaignFolder", "load_config", "parse_config"]
