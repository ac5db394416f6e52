# IAM roles for service accounts (IRSA). Each role trusts the cluster's OIDC
# provider for exactly the ServiceAccount named below (`sub`) and only for
# tokens minted for STS (`aud`), so no other pod, and no token meant for
# another audience, can assume it.
#
#   operator:     the chart's ServiceAccount <release>-operator; manages AWS
#                 IoT Core for Gateways and Devices with `provider: awsIot`
#                 (operator/src/aws_iot).
#   EBS CSI:      the driver's controller (storage.tf).
#
# The gateway workload has no role: it connects to IoT Core as an MQTT
# client with its own X.509 certificate, and what it may do there is the
# IoT policy the operator registers for it (operator/src/aws_iot/gateway.rs),
# not IAM.

locals {
  oidc_issuer = trimprefix(aws_eks_cluster.this.identity[0].oidc[0].issuer, "https://")

  operator_subject = "system:serviceaccount:${var.operator_namespace}:${var.operator_service_account}"

  # What the operator names in IoT Core, per namespace: a Device's thing and
  # its policy <namespace>_<device>, a gateway workload's policy
  # <namespace>_<gateway>_gateway. Kubernetes names hold no `_`, so
  # <namespace>_* is that namespace's and no other's.
  iot_thing_arns  = formatlist("${local.iot_arn}:thing/%s_*", var.iot_namespaces)
  iot_policy_arns = formatlist("${local.iot_arn}:policy/%s_*", var.iot_namespaces)
  # Certificate ids are hashes of the certificate: no name to scope by. The
  # Gateways' CAs (cacert/), the devices' and the gateway workloads'
  # certificates (cert/).
  iot_cert_arns = ["${local.iot_arn}:cert/*", "${local.iot_arn}:cacert/*"]
}

# ---------------------------------------------------------------- operator

data "aws_iam_policy_document" "operator_trust" {
  statement {
    sid     = "OperatorServiceAccount"
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.eks.arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = [local.operator_subject]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "operator" {
  name                 = "${local.name}-operator"
  description          = "fleetward operator (IRSA: ${local.operator_subject}): AWS IoT Core registrations"
  assume_role_policy   = data.aws_iam_policy_document.operator_trust.json
  max_session_duration = 3600
}

# Exactly the IoT calls operator/src/aws_iot makes (the terraform test
# derives that list from the code and compares), each on the narrowest
# resources IoT Core lets a policy name.
data "aws_iam_policy_document" "operator" {
  # These act on no existing named resource (a registration creates the
  # certificate; the endpoint and registration code are per account), so
  # IAM accepts only "*" for them.
  statement {
    sid    = "AccountLevelIot"
    effect = "Allow"
    actions = [
      "iot:DescribeEndpoint",
      "iot:GetRegistrationCode",
      "iot:RegisterCACertificate",
      "iot:RegisterCertificate",
    ]
    resources = ["*"]
  }

  statement {
    sid    = "Certificates"
    effect = "Allow"
    actions = [
      "iot:DeleteCACertificate",
      "iot:DeleteCertificate",
      "iot:DescribeCACertificate",
      "iot:DescribeCertificate",
      "iot:UpdateCACertificate",
      "iot:UpdateCertificate",
    ]
    resources = local.iot_cert_arns
  }

  statement {
    sid    = "Things"
    effect = "Allow"
    actions = [
      "iot:CreateThing",
      "iot:DeleteThing",
      "iot:DescribeThing",
      "iot:ListThingPrincipals",
      "iot:UpdateThing",
    ]
    resources = local.iot_thing_arns
  }

  # The devices' policies and the gateway workloads' policies.
  statement {
    sid    = "Policies"
    effect = "Allow"
    actions = [
      "iot:CreatePolicy",
      "iot:CreatePolicyVersion",
      "iot:DeletePolicy",
      "iot:DeletePolicyVersion",
      "iot:GetPolicy",
      "iot:ListPolicyVersions",
      "iot:ListTargetsForPolicy",
    ]
    resources = local.iot_policy_arns
  }

  # Attachments are authorized on the certificate (the target or
  # principal) and the thing or policy it is attached to.
  statement {
    sid    = "Attachments"
    effect = "Allow"
    actions = [
      "iot:AttachPolicy",
      "iot:AttachThingPrincipal",
      "iot:DetachPolicy",
      "iot:DetachThingPrincipal",
      "iot:ListAttachedPolicies",
    ]
    resources = concat(local.iot_cert_arns, local.iot_thing_arns, local.iot_policy_arns)
  }
}

resource "aws_iam_role_policy" "operator" {
  name   = "aws-iot-registrations"
  role   = aws_iam_role.operator.id
  policy = data.aws_iam_policy_document.operator.json
}
