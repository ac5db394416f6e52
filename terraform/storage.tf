# Persistent volumes: the EBS CSI driver as an EKS addon, so that claims
# (the chart's Kafka, anything with a PersistentVolumeClaim) get EBS
# volumes. Its controller creates, attaches and deletes the volumes with
# an IRSA role of its own, holding AWS's managed policy for the driver; the
# nodes' role gains nothing. devenv/aws.sh adds the default StorageClass
# (gp3, encrypted) that names this driver.

locals {
  # The addon's controller ServiceAccount, as the addon installs it.
  ebs_csi_subject = "system:serviceaccount:kube-system:ebs-csi-controller-sa"
}

data "aws_iam_policy_document" "ebs_csi_trust" {
  statement {
    sid     = "EbsCsiControllerServiceAccount"
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.eks.arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = [local.ebs_csi_subject]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "ebs_csi" {
  name                 = "${local.name}-ebs-csi"
  description          = "EBS CSI driver controller (IRSA: ${local.ebs_csi_subject}): the cluster's EBS volumes"
  assume_role_policy   = data.aws_iam_policy_document.ebs_csi_trust.json
  max_session_duration = 3600
}

# AWS's policy for the driver: EC2 volume and snapshot calls, limited by
# its conditions to volumes the driver tagged as its own.
resource "aws_iam_role_policy_attachment" "ebs_csi" {
  role       = aws_iam_role.ebs_csi.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"
}

# The addon's default version for the cluster's Kubernetes version, chosen
# when it is created. After the node group: the controller needs nodes to
# run on, and EKS reports the addon active only once it runs.
resource "aws_eks_addon" "ebs_csi" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "aws-ebs-csi-driver"
  service_account_role_arn    = aws_iam_role.ebs_csi.arn
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "PRESERVE"

  depends_on = [
    aws_eks_node_group.default,
    aws_iam_role_policy_attachment.ebs_csi,
  ]
}
